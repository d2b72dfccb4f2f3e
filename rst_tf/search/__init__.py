"""The adversarial search: its losses (`objectives`), the Keras model whose step attacks and then learns
(`search_model`), nested tickets of several ratios in one network (`nested`) and distribution strategies
(`distribute`)."""
