"""Reading what runs write: progress.jsonl, progress lines in their logs, and the files' tails."""
