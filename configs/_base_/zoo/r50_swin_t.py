# Two-model zoo of the paper's motivating CIFAR-100 example (Sec. 1): ResNet-50 and Swin-T,
# both supervised on ImageNet-1k (names from model_zoo.yml).
zoo = dict(
    pretrained=True,
    input_size=(3, 224, 224),
    models=['resnet50_in1k', 'swin_tiny_in1k'])
