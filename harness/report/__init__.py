"""Reports of a verdict: terminal and Markdown tables, HTML, JUnit, report diffs."""
