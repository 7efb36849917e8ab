"""Shared foundations every layer may use: settings, device/dtype, images, the query
bundle, retries and guarded URL fetching. Imports nothing from the rest of ``rag``."""
