"""Operators and graph plumbing: which nodes are editable, their weights as matrices and back."""
