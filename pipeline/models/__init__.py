"""The classifiers: ``networks`` (ToyMLP, SmallCNN, ResNet9, torchvision's ResNet-18/34, SOSR's
cost layer, the helpers that find and freeze a head), ``registry`` (a model by name, its options
checked) and ``pretrained`` (ImageNet weights from the local cache, never downloaded silently).

Plain PyTorch modules. Never imports Ray, DVC, the data layer or the training methods.
"""
