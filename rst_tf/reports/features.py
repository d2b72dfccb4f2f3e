"""Feature distances under random noise (paper Fig. 4): how far uniform noise moves the last conv features."""
import keras
import numpy as np
import tensorflow as tf

from rst_tf import attacks
from rst_tf.method import layers, masking
from rst_tf.reports import suite


def feature_model(network, layer_name="pool"):
    """The network up to the input of layer `layer_name` (our networks: the last conv block's features)."""
    return keras.Model(network.input, network.get_layer(layer_name).input)


def feature_distance(networks_by_name, batches, epsilon, seed=0, layer_name="pool"):
    """Mean over examples of ||f(x) - f(x + u)|| / ||f(x)|| for uniform noise u in [-epsilon, epsilon] (clipped to
    [0, 1]), f the features entering global average pooling (paper Fig. 4). Returns {name: mean distance}.

    Every model sees the same noise: batch i draws it from (seed, i).
    """
    batches = suite.materialize(batches)
    distances = {}
    for name, network in networks_by_name.items():
        features = feature_model(network, layer_name)
        masked = list(layers.current_masks(network).items())
        masked_layers, masks = [layer for layer, _ in masked], [mask for _, mask in masked]

        @tf.function(reduce_retracing=True)
        def distance(images, noise_seed, masks, features=features, masked_layers=masked_layers):
            noise = tf.random.stateless_uniform(tf.shape(images), noise_seed, -epsilon, epsilon, alg=attacks.RNG_ALG)
            with masking.supplied_masks(dict(zip(masked_layers, masks))):
                clean = features(images, training=False)
                noisy = features(tf.clip_by_value(images + noise, 0.0, 1.0), training=False)
            flat = lambda t: tf.reshape(t, [tf.shape(t)[0], -1])
            numerator = tf.norm(flat(clean - noisy), axis=1)
            return numerator / tf.maximum(tf.norm(flat(clean), axis=1), 1e-12)

        values = [distance(images, tf.constant([seed, index], tf.int64), masks).numpy()
                  for index, (images, _) in enumerate(batches)]
        distances[name] = float(np.concatenate(values).mean()) if values else float("nan")
    return distances
