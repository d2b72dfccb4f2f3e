"""rst-tf: Robust Scratch Tickets in Keras/TensorFlow."""
