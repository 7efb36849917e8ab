"""Retrieval: the composed-query retriever (text, image, image + instruction) and user filter
expressions."""
