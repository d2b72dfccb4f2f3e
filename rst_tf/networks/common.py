"""Pieces every network shares: masked-layer factory with per-layer seed streams, non-affine BN, normalisation."""
import dataclasses

import keras

from rst_tf.method import layers

# Per-channel mean and std of the training images, applied inside the model.
NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@dataclasses.dataclass
class MaskedLayerFactory:
    """Makes the masked layers of one network; layer i draws its weights from stream i of `seed`.

    `remaining_ratio` applies to every masked layer; a layer made with `dense=True` keeps all its weights and never
    trains its scores (the paper's dense first conv / classifier option).
    """
    remaining_ratio: float = 0.5
    sparsity: str = "element"
    weight_init: str = "signed_kaiming_constant"
    seed: int = 0
    scale_fan: bool = False
    width_multiplier: float = 1.0
    _next_stream: int = 0

    def width(self, channels):
        return max(1, int(round(channels * self.width_multiplier)))

    def _common(self, name, dense):
        stream = self._next_stream
        self._next_stream += 1
        return dict(name=name, remaining_ratio=1.0 if dense else self.remaining_ratio,
                    sparsity=self.sparsity, weight_init=self.weight_init, seed=(self.seed, stream),
                    scale_fan=self.scale_fan, train_scores=not dense)

    def conv(self, filters, kernel_size, strides=1, padding=None, name=None, dense=False):
        if padding is None:
            padding = kernel_size // 2
        return layers.MaskedConv2D(filters, kernel_size, strides=strides, padding=padding,
                                   **self._common(name, dense))

    def dense(self, units, name=None, dense=False):
        return layers.MaskedDense(units, **self._common(name, dense))


def batch_norm(name=None):
    """Non-affine BatchNorm with PyTorch's defaults (momentum 0.1 there is 0.9 here, epsilon 1e-5).

    Statistics are synchronised over replicas, so a batch split over devices normalises as on one device.
    """
    return layers.TicketBatchNormalization(center=False, scale=False, momentum=0.9, epsilon=1e-5, synchronized=True,
                                           name=name)


def network_input(input_shape, dataset):
    """The model input (pixels in [0, 1]) and its normalised tensor."""
    inputs = keras.Input(shape=input_shape, name="images")
    mean, std = NORMALIZATION[dataset]
    return inputs, layers.InputNormalization(mean, std, name="normalize")(inputs)
