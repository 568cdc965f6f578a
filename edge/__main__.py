"""``python -m edge`` runs the agent (same as the ``edge-agent`` console script)."""

from .entry import main

if __name__ == "__main__":
    main()
