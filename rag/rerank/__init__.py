"""The VLM rerank: the node postprocessor and its typed outcome, the reply parser, the grid
image, and the VLM backends (one per module under ``backends``)."""
