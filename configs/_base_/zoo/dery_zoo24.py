# The paper's 24-model zoo (DeRy, Sec. 5 / Table 7): ResNet-18/50/101 (supervised), ResNet-50
# (MoCo v2, BYOL, SimCLR), SWSL ResNeXt-50, MobileNetV3-L, ViT-T/S/B/L (IN-21k), MoCo v3 ViT-S,
# MAE ViT-B, Swin-T/S/B (IN-1k) and Swin-L (IN-22k), RegNetY 800MF..32GF. Names are entries of
# model_zoo.yml (which also holds a torchvision ResNet-50, not part of the paper's zoo).
zoo = dict(
    pretrained=True,
    input_size=(3, 224, 224),
    models=[
        # ResNets, supervised and self-supervised
        'resnet18_in1k', 'resnet50_in1k', 'resnet101_in1k',
        'resnet50_mocov2', 'resnet50_byol', 'resnet50_simclr',
        # ResNeXt, MobileNet
        'resnext50_swsl', 'mobilenetv3_large',
        # ViTs
        'vit_tiny_in21k', 'vit_small_in21k', 'vit_base_in21k', 'vit_large_in21k',
        'vit_small_mocov3', 'vit_base_mae',
        # Swins
        'swin_tiny_in1k', 'swin_small_in1k', 'swin_base_in1k', 'swin_large_in21k',
        # RegNetYs
        'regnety_800mf', 'regnety_1.6gf', 'regnety_3.2gf', 'regnety_8gf', 'regnety_16gf',
        'regnety_32gf',
    ])
