"""The worker: claims jobs, validates their files, and trains them in a child process."""
