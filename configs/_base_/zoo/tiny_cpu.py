# A tiny random-init zoo (one CNN, one ViT, one Swin from timm and mmpretrain) for CPU tests and
# smoke runs: no weights, no download. Entries use the model_zoo.yml fields.
zoo = dict(
    pretrained=False,
    input_size=(3, 32, 32),
    models=[
        dict(name='tiny_resnet', adapter='timm', model='resnet18', family='cnn',
             kwargs=dict(layers=[1, 2, 2, 1], channels=[16, 32, 64, 128]), input_size=[3, 32, 32],
             pretrain=dict(data='none', method='random init')),
        dict(name='tiny_vit', adapter='timm', model='vit_tiny_patch16_224', family='vit',
             kwargs=dict(img_size=32, patch_size=4, embed_dim=64, depth=6, num_heads=2),
             input_size=[3, 32, 32], pretrain=dict(data='none', method='random init')),
        dict(name='tiny_swin', adapter='mmpretrain',
             model=dict(type='SwinTransformer', arch=dict(embed_dims=32, depths=[2, 2, 2, 2],
                                                          num_heads=[1, 2, 4, 8]),
                        img_size=32, patch_size=2, window_size=4, pad_small_map=True),
             family='swin', input_size=[3, 32, 32], pretrain=dict(data='none', method='random init')),
    ])
