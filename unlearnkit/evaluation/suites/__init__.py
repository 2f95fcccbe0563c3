"""The built-in evaluation suites, one module each; registered in :mod:`unlearnkit.evaluation.registry`."""
