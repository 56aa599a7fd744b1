"""The tiny recipe with a second student, ``broken``, whose builder raises.

A bug in a recipe that shows only when the student is built, i.e. inside a sweep's task (the
sweep itself only checks that the name exists), never in the process that plans the sweep.
"""

from dataclasses import replace
from pathlib import Path

from litcache import load_recipe

base = load_recipe(Path(__file__).with_name("tiny.py"))


def broken():
    raise RuntimeError("the builder of student 'broken' fails on purpose")


recipe = replace(base, students={**base.students, "broken": broken})
