"""python -m llmproxy → the llm-proxy command."""

from llmproxy.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
