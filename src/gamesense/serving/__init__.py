"""Model serving: batch scoring (``batch``) and the online FastAPI app (``app``)."""
