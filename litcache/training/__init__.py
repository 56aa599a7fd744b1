"""Stage 2: train students from a store; the teacher never runs (except as the online baseline).

``blocks`` is `litcache train-blocks`; ``config`` resolves its flags once per run; ``step`` is one
step of each mode; ``loop`` is what train-blocks and train-teacher (``teacher``) share; ``dataset``
reads the store; ``student`` builds, saves, loads and assembles students.
"""
