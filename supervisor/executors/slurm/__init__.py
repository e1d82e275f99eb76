"""The Slurm executor's pieces: the client commands (commands.py, parsing.py) and the local
stand-in process group of a running job (standin.py)."""
