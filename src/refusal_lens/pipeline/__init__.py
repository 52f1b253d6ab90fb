"""The refusal-feature search as a table of stages (``stages.py``), one module per stage.

``run.run_pipeline`` walks the table; ``stage.Stage`` says what a stage is.
"""
