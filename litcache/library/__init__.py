"""Block libraries: many candidate sections trained once from one store, then mixed into students.

``litcache library`` makes each section's candidates (``candidates``), scores and costs them on a held-out
store (``scores``) and writes the library (``build``); ``litcache search`` picks the best mix under a budget,
assembles, fine-tunes and measures it (``search``). No candidate needs the teacher's forward.
"""

from .build import LibraryOptions, build_library, read_library
from .candidates import Candidate, plan_candidates
from .search import Budget, best_mixes, parse_budget, search

__all__ = ["LibraryOptions", "build_library", "read_library", "Candidate", "plan_candidates", "Budget",
           "best_mixes", "parse_budget", "search"]
