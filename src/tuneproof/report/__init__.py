"""The verification report: its schema, its wording, and its terminal and HTML renderings."""
