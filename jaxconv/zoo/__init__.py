"""Standard CNNs with torchvision's layouts and parameter names: ResNet, VGG, U-Net.

Each model is a function returning a ``Layer`` and takes ``num_classes``,
``impl`` (the convolution implementation) and ``dtype`` (the compute dtype).
The torchvision ones load a torchvision ``state_dict`` with
``jaxconv.convert.load_torch_state_dict(model, input_shape, state_dict)``.
"""

from jaxconv.zoo.resnet import resnet18 as resnet18
from jaxconv.zoo.resnet import resnet34 as resnet34
from jaxconv.zoo.resnet import resnet50 as resnet50
from jaxconv.zoo.resnet import resnet101 as resnet101
from jaxconv.zoo.resnet import resnext50_32x4d as resnext50_32x4d
from jaxconv.zoo.resnet import wide_resnet50_2 as wide_resnet50_2
from jaxconv.zoo.unet import unet as unet
from jaxconv.zoo.vgg import vgg11 as vgg11
from jaxconv.zoo.vgg import vgg11_bn as vgg11_bn
from jaxconv.zoo.vgg import vgg16 as vgg16
from jaxconv.zoo.vgg import vgg16_bn as vgg16_bn

__all__ = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnext50_32x4d",
    "wide_resnet50_2",
    "vgg11",
    "vgg11_bn",
    "vgg16",
    "vgg16_bn",
    "unet",
]
