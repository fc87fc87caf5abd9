"""Run a Herald worker: ``python -m pipeline.worker worker -l info``.

A separate entry module, so that ``pipeline.app`` is imported once under its own
name (agents import it too) rather than a second time as ``__main__``.
"""

from pipeline.app import app


def main() -> None:
    app.main()


if __name__ == "__main__":
    main()
