"""Graph nodes: one module per node, plain functions first, Operator last."""
