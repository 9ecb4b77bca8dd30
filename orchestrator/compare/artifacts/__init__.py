"""Artifacts compared by what they are.

Each comparator is a declaration: the kind it reads, the file names it claims, and where it
runs (on the host, or inside the job's own image for files that are programs, such as
pickles). `ArtifactContents.compare` (contents.py) is the one place where a comparator that
cannot read a file gives way to the bitwise comparison, with its reason and, where diffoscope
is installed, its diff.

The package is imported by the tolerance parser of every command, so this file imports
nothing: numpy and the engine load only where contents are compared (`contents.py`).
"""
