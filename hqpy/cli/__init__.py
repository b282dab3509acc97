"""The `hq` command line: argument parsing, commands and the three output modes."""
