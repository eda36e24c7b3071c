"""Consumers' side: the registered pyfunc model, batch embedding, neighbours and exports."""
