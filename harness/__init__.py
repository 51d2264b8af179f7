"""Model-export and cross-runtime conformance harness.

Data flow: dataset -> stack -> input tensors -> runtime -> outputs ->
post-processing -> comparison -> report.
"""

__version__ = "0.1.0"
