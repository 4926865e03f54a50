# The demo zoo: four small models of four families, different widths and depths, for 16x16 inputs
# (the target digits are 8x8 scans; 16x16 keeps the whole demo within minutes on two CPU cores).
# tools/demo.py pre-trains each on the source task (procedural glyphs, configs/demo/source_pretrain.py)
# and fills in `weights` (WORK_DIR/zoo/<name>-<digest>.pth, a plain state dict of the model below),
# so the DeRy config loads them through the normal zoo adapters. Fields as in model_zoo.yml.
_source = dict(data='procedural glyphs (16 classes, demo)', method='supervised, tools/demo.py')
zoo = dict(
    pretrained=True,
    input_size=(3, 16, 16),
    models=[
        dict(name='resnet18_w16', adapter='mmpretrain', family='cnn', input_size=[3, 16, 16], pretrain=_source,
             model=dict(type='ResNet_CIFAR', depth=18, stem_channels=16, base_channels=16, out_indices=(3, ))),
        dict(name='vit_d6_w64', adapter='timm', family='vit', input_size=[3, 16, 16], pretrain=_source,
             model='vit_tiny_patch16_224',
             kwargs=dict(img_size=16, patch_size=4, embed_dim=64, depth=6, num_heads=2, class_token=False,
                         global_pool='avg')),
        dict(name='swin_d222_w32', adapter='mmpretrain', family='swin', input_size=[3, 16, 16], pretrain=_source,
             model=dict(type='SwinTransformer', arch=dict(embed_dims=32, depths=[2, 2, 2], num_heads=[1, 2, 4]),
                        img_size=16, patch_size=2, window_size=4, pad_small_map=True, drop_path_rate=0.0,
                        out_indices=(2, ))),
        dict(name='convnext_d222_w32', adapter='mmpretrain', family='cnn', input_size=[3, 16, 16],
             pretrain=_source,
             model=dict(type='ConvNeXt', arch=dict(depths=[2, 2, 2], channels=[32, 64, 128]), stem_patch_size=2,
                        layer_scale_init_value=0.1, out_indices=(2, ), gap_before_final_norm=False)),
    ])
