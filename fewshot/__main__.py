"""`python -m fewshot <command> [flags]`: the `fewshot` command (fewshot.cli.scripts.main) without the
installed entry point."""

from fewshot.cli.scripts import main

main()
