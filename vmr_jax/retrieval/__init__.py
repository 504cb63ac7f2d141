"""Video corpus moment retrieval: XML's inference ranking (``ranking``), the corpus index and
sharded two-stage search (``corpus``), and evaluating a family on a split (``evaluate``)."""
