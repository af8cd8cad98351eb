"""Networks of the report's section 5: LeNet-5 (MNIST) and ResNet-18/50 for 32x32 images (CIFAR).

LeNet-5 follows the report's modified version: ReLU instead of tanh, average pooling. Its
initialisation (--init) has two variants, because the report's words and its authors' code differ:
  report        weights from a normal with std 0.1 truncated at 2 std (TensorFlow's
                truncated_normal, as the report describes), biases zero (TensorFlow's default);
  authors-code  weights from a standard normal truncated to +-0.2 (torch's trunc_normal_ with its
                default std 1), which is close to uniform on +-0.2 (std ~0.115), and PyTorch's
                default biases, uniform on +-1/sqrt(fan_in) (what the report's numbers came from).

The ResNets are the CIFAR variant of Liu (kuangliu/pytorch-cifar) that the report uses: the usual
widths and blocks, but the stem is one 3x3 convolution with stride 1 and no max-pool, so 32x32
inputs keep their resolution until the first strided stage. PyTorch's default initialisation.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


INITS = ("report", "authors-code")


class LeNet5(nn.Module):
    """conv5x5(6, pad 2)-ReLU-avgpool2-conv5x5(16)-ReLU-avgpool2-fc120-ReLU-fc84-ReLU-fc(classes)."""

    def __init__(self, num_classes=10, in_channels=1, init="report"):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init={init!r} is not allowed: use one of {', '.join(INITS)}")
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                if init == "report":
                    nn.init.trunc_normal_(m.weight, std=0.1, a=-0.2, b=0.2)
                    nn.init.zeros_(m.bias)
                else:  # the bias keeps the default initialisation nn.Conv2d / nn.Linear gave it
                    nn.init.trunc_normal_(m.weight, std=1.0, a=-0.2, b=0.2)

    def forward(self, x):
        x = F.avg_pool2d(F.relu(self.conv1(x)), 2)
        x = F.avg_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


def _shortcut(in_planes, out_planes, stride):
    """Identity, or a 1x1 projection where the shape changes (He et al.'s option B)."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes))


class ResNet(nn.Module):
    def __init__(self, block, num_blocks, num_classes=10, in_channels=3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)  # CIFAR stem: no 7x7/2, no max-pool
        self.bn1 = nn.BatchNorm2d(64)
        layers, in_planes = [], 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks)):
            for stride in [1 if i == 0 else 2] + [1] * (n - 1):
                layers.append(block(in_planes, planes, stride))
                in_planes = planes * block.expansion
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def resnet18(num_classes=10, in_channels=3):
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels)


def resnet50(num_classes=10, in_channels=3):
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels)


MODELS = {"lenet": LeNet5, "resnet18": resnet18, "resnet50": resnet50}


def make_model(name, num_classes, in_channels, init=None):
    """Network `name`; `init` chooses LeNet's initialisation (the ResNets have PyTorch's)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: valid models are {', '.join(MODELS)}")
    return MODELS[name](num_classes=num_classes, in_channels=in_channels, **({"init": init} if init else {}))


def has_batch_norm(model):
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
