"""Every ImageNet classifier in ``keras.applications``, registered as zoo specs.

Importing this module only fills the registry: the builders are named as strings and Keras is
imported when a model is first built.

Sources of the numbers:

* ``params``: ``count_params()`` of the ``include_top=True`` model built with ``weights=None``
  (``tests/test_zoo_applications.py`` rebuilds every model and checks it); ``NOTOP_PARAMS``,
  the same for ``include_top=False``: what a cached file must be large enough to hold.
* ``size_mb``, ``top1``, ``top5``, ``depth``: the table of https://keras.io/api/applications/
  ("Depth counts the number of layers with parameters"; "-" there is ``None`` here). That table
  leaves out MobileNetV3: its top-1 is the 1.0/224 row of the table in Keras's own
  ``mobilenet_v3`` docstring, its size is estimated as float32 parameters (4 bytes each).
* ``weights``: the file name, URL and hash that each ``keras/src/applications/*.py`` passes to
  ``get_file`` for ``weights="imagenet", include_top=True``, so the file lands in the same
  ``~/.keras/models`` cache Keras itself uses. MobileNet and MobileNetV2 are fetched by Keras
  without a hash, so they have none here either. ConvNeXt hashes are SHA-256, the others MD5.
* ``convention`` (how a picture is fitted to the input, see ``InputConvention``): the Keras
  applications README reports "Top-1: single center crop"; its author's evaluation script
  (tensornets ``evaluate_imagenet.py``) scales the shorter side to 8/7 of the input and crops
  the centre: 0.875, bilinear. EfficientNet B0-B7 and V2 B0-B3 follow the TF references'
  ``CROP_PADDING = 32`` (a crop of ``size / (size + 32)``, bicubic); automl's EfficientNetV2
  evaluation crops only below 320 px, so V2 S/M/L squash the whole picture; ConvNeXt uses its
  official ``crop_pct`` 224/256, bicubic.
* ``cam_layer``: the last layer with a spatial 4-D output before the classifier head. Where
  Keras leaves that layer unnamed (NASNet's final ReLU, MobileNetV3's final hard-swish) its
  auto-generated name changes from one build to the next, so the named layer just before it
  is used instead (``normal_concat_*``, ``conv_1_bn``). VGG uses its last convolution.
"""

from __future__ import annotations

import re

from kerascope.zoo.specs import InputConvention, ModelSpec, WeightsSource, register

_GCS = "https://storage.googleapis.com/tensorflow/keras-applications/"

# family: (preprocess mode, weights URL directory, description of the family)
_FAMILIES: dict[str, tuple[str, str, str]] = {
    "vgg": ("caffe", _GCS + "{name}/", "plain 3x3 convolution stacks, huge dense head (2014)"),
    "resnet": ("caffe", _GCS + "resnet/", "residual bottleneck blocks (2015)"),
    "resnet_v2": ("tf", _GCS + "resnet/", "pre-activation residual blocks (2016)"),
    "inception_v3": ("tf", _GCS + "inception_v3/", "factorised Inception modules (2015)"),
    "inception_resnet_v2": (
        "tf",
        _GCS + "inception_resnet_v2/",
        "Inception modules with residual connections (2016)",
    ),
    "xception": ("tf", _GCS + "xception/", "depthwise-separable Inception (2016)"),
    "mobilenet": ("tf", _GCS + "mobilenet/", "depthwise-separable convolutions for phones"),
    "mobilenet_v2": ("tf", _GCS + "mobilenet_v2/", "inverted residuals, linear bottlenecks"),
    "mobilenet_v3": ("none", _GCS + "mobilenet_v3/", "searched mobile net with hard-swish and SE"),
    "densenet": ("torch", _GCS + "densenet/", "densely connected blocks (2016)"),
    "nasnet": ("tf", _GCS + "nasnet/", "architecture-search cells (2017)"),
    "efficientnet": (
        "none",
        "https://storage.googleapis.com/keras-applications/",
        "compound-scaled MBConv network (2019)",
    ),
    "efficientnet_v2": (
        "none",
        _GCS + "efficientnet_v2/",
        "fused-MBConv, trained for speed (2021)",
    ),
    "convnext": ("none", _GCS + "convnext/", "ResNet modernised after vision transformers (2022)"),
}

# Where the downloaded name differs from the cache name Keras gives it.
_URL_NAMES = {"nasnet_mobile.h5": "NASNet-mobile.h5", "nasnet_large.h5": "NASNet-large.h5"}

_TF_KERNELS = "_weights_tf_dim_ordering_tf_kernels.h5"

# keras_name, name, family, input size, cam layer, params, depth, size MB, top-1, top-5,
# weights file name (as passed to keras's get_file), its hash, extra aliases
_MODELS: list[tuple] = [
    ("VGG16", "vgg16", "vgg", 224, "block5_conv3", 138_357_544, 16, 528, 0.713, 0.901,
     "vgg16" + _TF_KERNELS, "64373286793e3c8b2b4e3219cbf3544b", ()),
    ("VGG19", "vgg19", "vgg", 224, "block5_conv4", 143_667_240, 19, 549, 0.713, 0.900,
     "vgg19" + _TF_KERNELS, "cbe5617147190e668d6c5d5026f83318", ()),
    ("ResNet50", "resnet50", "resnet", 224, "conv5_block3_out", 25_636_712, 107, 98, 0.749,
     0.921, "resnet50" + _TF_KERNELS, "2cb95161c43110f7111970584f804107", ()),
    ("ResNet101", "resnet101", "resnet", 224, "conv5_block3_out", 44_707_176, 209, 171, 0.764,
     0.928, "resnet101" + _TF_KERNELS, "f1aeb4b969a6efcfb50fad2f0c20cfc5", ()),
    ("ResNet152", "resnet152", "resnet", 224, "conv5_block3_out", 60_419_944, 311, 232, 0.766,
     0.931, "resnet152" + _TF_KERNELS, "100835be76be38e30d865e96f2aaae62", ()),
    ("ResNet50V2", "resnet50_v2", "resnet_v2", 224, "post_relu", 25_613_800, 103, 98, 0.760,
     0.930, "resnet50v2" + _TF_KERNELS, "3ef43a0b657b3be2300d5770ece849e0", ()),
    ("ResNet101V2", "resnet101_v2", "resnet_v2", 224, "post_relu", 44_675_560, 205, 171, 0.772,
     0.938, "resnet101v2" + _TF_KERNELS, "6343647c601c52e1368623803854d971", ()),
    ("ResNet152V2", "resnet152_v2", "resnet_v2", 224, "post_relu", 60_380_648, 307, 232, 0.780,
     0.942, "resnet152v2" + _TF_KERNELS, "a49b44d1979771252814e80f8ec446f9", ()),
    ("InceptionV3", "inception_v3", "inception_v3", 299, "mixed10", 23_851_784, 189, 92, 0.779,
     0.937, "inception_v3" + _TF_KERNELS, "9a0d58056eeedaa3f26cb7ebd46da564", ()),
    ("InceptionResNetV2", "inception_resnet_v2", "inception_resnet_v2", 299, "conv_7b_ac",
     55_873_736, 449, 215, 0.803, 0.953, "inception_resnet_v2" + _TF_KERNELS,
     "e693bd0210a403b3192acc6073ad2e96", ()),
    ("Xception", "xception", "xception", 299, "block14_sepconv2_act", 22_910_480, 81, 88, 0.790,
     0.945, "xception" + _TF_KERNELS, "0a58e3b7378bc2990ea3b43d5981f1f6", ()),
    ("MobileNet", "mobilenet", "mobilenet", 224, "conv_pw_13_relu", 4_253_864, 55, 16, 0.704,
     0.895, "mobilenet_1_0_224_tf.h5", None, ("mobilenet_v1", "mobilenetv1")),
    ("MobileNetV2", "mobilenet_v2", "mobilenet_v2", 224, "out_relu", 3_538_984, 105, 14, 0.713,
     0.901, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5", None, ()),
    ("MobileNetV3Small", "mobilenet_v3_small", "mobilenet_v3", 224, "conv_1_bn", 2_554_968,
     None, 10.2, 0.681, None, "weights_mobilenet_v3_small_224_1.0_float.h5",
     "8768d4c2e7dee89b9d02b2d03d65d862", ()),
    ("MobileNetV3Large", "mobilenet_v3_large", "mobilenet_v3", 224, "conv_1_bn", 5_507_432,
     None, 22.0, 0.756, None, "weights_mobilenet_v3_large_224_1.0_float.h5",
     "59e551e166be033d707958cf9e29a6a7", ()),
    ("DenseNet121", "densenet121", "densenet", 224, "relu", 8_062_504, 242, 33, 0.750, 0.923,
     "densenet121" + _TF_KERNELS, "9d60b8095a5708f2dcce2bca79d332c7", ()),
    ("DenseNet169", "densenet169", "densenet", 224, "relu", 14_307_880, 338, 57, 0.762, 0.932,
     "densenet169" + _TF_KERNELS, "d699b8f76981ab1b30698df4c175e90b", ()),
    ("DenseNet201", "densenet201", "densenet", 224, "relu", 20_242_984, 402, 80, 0.773, 0.936,
     "densenet201" + _TF_KERNELS, "1ceb130c1ea1b78c3bf6114dbdfd8807", ()),
    ("NASNetMobile", "nasnet_mobile", "nasnet", 224, "normal_concat_12", 5_326_716, 389, 23,
     0.744, 0.919, "nasnet_mobile.h5", "020fb642bf7360b370c678b08e0adf61", ()),
    ("NASNetLarge", "nasnet_large", "nasnet", 331, "normal_concat_18", 88_949_818, 533, 343,
     0.825, 0.960, "nasnet_large.h5", "11577c9a518f0070763c2b964a382f17", ()),
    ("EfficientNetB0", "efficientnet_b0", "efficientnet", 224, "top_activation", 5_330_571, 132,
     29, 0.771, 0.933, "efficientnetb0.h5", "902e53a9f72be733fc0bcb005b3ebbac", ()),
    ("EfficientNetB1", "efficientnet_b1", "efficientnet", 240, "top_activation", 7_856_239, 186,
     31, 0.791, 0.944, "efficientnetb1.h5", "1d254153d4ab51201f1646940f018540", ()),
    ("EfficientNetB2", "efficientnet_b2", "efficientnet", 260, "top_activation", 9_177_569, 186,
     36, 0.801, 0.949, "efficientnetb2.h5", "b15cce36ff4dcbd00b6dd88e7857a6ad", ()),
    ("EfficientNetB3", "efficientnet_b3", "efficientnet", 300, "top_activation", 12_320_535, 210,
     48, 0.816, 0.957, "efficientnetb3.h5", "ffd1fdc53d0ce67064dc6a9c7960ede0", ()),
    ("EfficientNetB4", "efficientnet_b4", "efficientnet", 380, "top_activation", 19_466_823, 258,
     75, 0.829, 0.964, "efficientnetb4.h5", "18c95ad55216b8f92d7e70b3a046e2fc", ()),
    ("EfficientNetB5", "efficientnet_b5", "efficientnet", 456, "top_activation", 30_562_527, 312,
     118, 0.836, 0.967, "efficientnetb5.h5", "ace28f2a6363774853a83a0b21b9421a", ()),
    ("EfficientNetB6", "efficientnet_b6", "efficientnet", 528, "top_activation", 43_265_143, 360,
     166, 0.840, 0.968, "efficientnetb6.h5", "165f6e37dce68623721b423839de8be5", ()),
    ("EfficientNetB7", "efficientnet_b7", "efficientnet", 600, "top_activation", 66_658_687, 438,
     256, 0.843, 0.970, "efficientnetb7.h5", "8c03f828fec3ef71311cd463b6759d99", ()),
    ("EfficientNetV2B0", "efficientnet_v2_b0", "efficientnet_v2", 224, "top_activation",
     7_200_312, None, 29, 0.787, 0.943, "efficientnetv2-b0.h5",
     "21ecbf6da12460d5c40bb2f29ceb2188", ()),
    ("EfficientNetV2B1", "efficientnet_v2_b1", "efficientnet_v2", 240, "top_activation",
     8_212_124, None, 34, 0.798, 0.950, "efficientnetv2-b1.h5",
     "069f0534ff22adf035c89e2d9547a9dc", ()),
    ("EfficientNetV2B2", "efficientnet_v2_b2", "efficientnet_v2", 260, "top_activation",
     10_178_374, None, 42, 0.805, 0.951, "efficientnetv2-b2.h5",
     "424e49f28180edbde1e94797771950a7", ()),
    ("EfficientNetV2B3", "efficientnet_v2_b3", "efficientnet_v2", 300, "top_activation",
     14_467_622, None, 59, 0.820, 0.958, "efficientnetv2-b3.h5",
     "1f1fc43bd98a6e4fd8fdfd551e02c7a0", ()),
    ("EfficientNetV2S", "efficientnet_v2_s", "efficientnet_v2", 384, "top_activation",
     21_612_360, None, 88, 0.839, 0.967, "efficientnetv2-s.h5",
     "e1d88a8495beba45748fedd0cecbe016", ()),
    ("EfficientNetV2M", "efficientnet_v2_m", "efficientnet_v2", 480, "top_activation",
     54_431_388, None, 220, 0.853, 0.974, "efficientnetv2-m.h5",
     "a3bf6aa3276309f4fc6a34aa114c95cd", ()),
    ("EfficientNetV2L", "efficientnet_v2_l", "efficientnet_v2", 480, "top_activation",
     119_027_848, None, 479, 0.857, 0.975, "efficientnetv2-l.h5",
     "27e6d408b53c7ebc868fefa357689935", ()),
    ("ConvNeXtTiny", "convnext_tiny", "convnext", 224, "convnext_tiny_stage_3_block_2_identity",
     28_589_128, None, 109.42, 0.813, None, "convnext_tiny.h5",
     "8ae6e78ce2933352b1ef4008e6dd2f17bc40771563877d156bc6426c7cf503ff", ("convnext_t",)),
    ("ConvNeXtSmall", "convnext_small", "convnext", 224,
     "convnext_small_stage_3_block_2_identity", 50_223_688, None, 192.29, 0.823, None,
     "convnext_small.h5", "ce1277d8f1ee5a0ef0e171469089c18f5233860ceaf9b168049cb9263fd7483c",
     ("convnext_s",)),
    ("ConvNeXtBase", "convnext_base", "convnext", 224, "convnext_base_stage_3_block_2_identity",
     88_591_464, None, 338.58, 0.853, None, "convnext_base.h5",
     "52cbb006d3dadd03f6e095a8ca1aca47aecdd75acb4bc74bce1f5c695d0086e6", ("convnext_b",)),
    ("ConvNeXtLarge", "convnext_large", "convnext", 224,
     "convnext_large_stage_3_block_2_identity", 197_767_336, None, 755.07, 0.863, None,
     "convnext_large.h5", "070c5ed9ed289581e477741d3b34beffa920db8cf590899d6d2c67fba2a198a6",
     ("convnext_l",)),
    ("ConvNeXtXLarge", "convnext_xlarge", "convnext", 224,
     "convnext_xlarge_stage_3_block_2_identity", 350_196_968, None, 1310, 0.867, None,
     "convnext_xlarge.h5", "c1f5ccab661354fc3a79a10fa99af82f0fbf10ec65cb894a3ae0815f17a889ee",
     ("convnext_xl",)),
]  # fmt: skip


# Files for include_top=False, as Keras passes them to get_file (cache name, URL, hash);
# tests/test_zoo_applications.py asks Keras itself for each and compares.
_NOTOP: dict[str, tuple[str, str, str | None]] = {
    "vgg16": (
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "6d6bbae143d832006294945121d1f1fc",
    ),
    "vgg19": (
        "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/vgg19/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "253f8cb515780f3b799900260a226db6",
    ),
    "resnet50": (
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "4d473c1dd8becc155b73f8504c6f6626",
    ),
    "resnet101": (
        "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/resnet/resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "88cf7a10940856eca736dc7b7e228a21",
    ),
    "resnet152": (
        "resnet152_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/resnet/resnet152_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "ee4c566cf9a93f14d82f913c2dc6dd0c",
    ),
    "resnet50_v2": (
        "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/resnet/resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "fac2f116257151a9d068a22e544a4917",
    ),
    "resnet101_v2": (
        "resnet101v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/resnet/resnet101v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "c0ed64b8031c3730f411d2eb4eea35b5",
    ),
    "resnet152_v2": (
        "resnet152v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/resnet/resnet152v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "ed17cf2e0169df9d443503ef94b23b33",
    ),
    "inception_v3": (
        "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "bcbd6486424b2319ff4ef7d526e38f63",
    ),
    "inception_resnet_v2": (
        "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/inception_resnet_v2/inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "d19885ff4a710c122648d3b5c3b684e4",
    ),
    "xception": (
        "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/xception/xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "b0042744bf5b25fce3cb969f33bebb97",
    ),
    "mobilenet": (
        "mobilenet_1_0_224_tf_no_top.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/mobilenet_1_0_224_tf_no_top.h5",
        None,
    ),
    "mobilenet_v2": (
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
        None,
    ),
    "mobilenet_v3_small": (
        "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v3/weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
        "d3e8ec802a04aa4fc771ee12a9a9b836",
    ),
    "mobilenet_v3_large": (
        "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v3/weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
        "07fb09a5933dd0c8eaafa16978110389",
    ),
    "densenet121": (
        "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/densenet/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "30ee3e1110167f948a6b9946edeeb738",
    ),
    "densenet169": (
        "densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/densenet/densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "b8c4d4c20dd625c148057b9ff1c1176b",
    ),
    "densenet201": (
        "densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/densenet/densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "c13680b51ded0fb44dff2d8f86ac8bb1",
    ),
    "nasnet_mobile": (
        "nasnet_mobile_no_top.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/nasnet/NASNet-mobile-no-top.h5",
        "1ed92395b5b598bdda52abe5c0dbfd63",
    ),
    "nasnet_large": (
        "nasnet_large_no_top.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/nasnet/NASNet-large-no-top.h5",
        "d81d89dc07e6e56530c4e77faddd61b5",
    ),
    "efficientnet_b0": (
        "efficientnetb0_notop.h5",
        "https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5",
        "50bc09e76180e00e4465e1a485ddc09d",
    ),
    "efficientnet_b1": (
        "efficientnetb1_notop.h5",
        "https://storage.googleapis.com/keras-applications/efficientnetb1_notop.h5",
        "74c4e6b3e1f6a1eea24c589628592432",
    ),
    "efficientnet_b2": (
        "efficientnetb2_notop.h5",
        "https://storage.googleapis.com/keras-applications/efficientnetb2_notop.h5",
        "111f8e2ac8aa800a7a99e3239f7bfb39",
    ),
    "efficientnet_b3": (
        "efficientnetb3_notop.h5",
        "https://storage.googleapis.com/keras-applications/efficientnetb3_notop.h5",
        "af6d107764bb5b1abb91932881670226",
    ),
    "efficientnet_b4": (
        "efficientnetb4_notop.h5",
        "https://storage.googleapis.com/keras-applications/efficientnetb4_notop.h5",
        "ebc24e6d6c33eaebbd558eafbeedf1ba",
    ),
    "efficientnet_b5": (
        "efficientnetb5_notop.h5",
        "https://storage.googleapis.com/keras-applications/efficientnetb5_notop.h5",
        "38879255a25d3c92d5e44e04ae6cec6f",
    ),
    "efficientnet_b6": (
        "efficientnetb6_notop.h5",
        "https://storage.googleapis.com/keras-applications/efficientnetb6_notop.h5",
        "9ecce42647a20130c1f39a5d4cb75743",
    ),
    "efficientnet_b7": (
        "efficientnetb7_notop.h5",
        "https://storage.googleapis.com/keras-applications/efficientnetb7_notop.h5",
        "cbcfe4450ddf6f3ad90b1b398090fe4a",
    ),
    "efficientnet_v2_b0": (
        "efficientnetv2-b0_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/efficientnet_v2/efficientnetv2-b0_notop.h5",
        "893217f2bb855e2983157299931e43ff",
    ),
    "efficientnet_v2_b1": (
        "efficientnetv2-b1_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/efficientnet_v2/efficientnetv2-b1_notop.h5",
        "0e80663031ca32d657f9caa404b6ec37",
    ),
    "efficientnet_v2_b2": (
        "efficientnetv2-b2_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/efficientnet_v2/efficientnetv2-b2_notop.h5",
        "1dfe2e7a5d45b6632553a8961ea609eb",
    ),
    "efficientnet_v2_b3": (
        "efficientnetv2-b3_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/efficientnet_v2/efficientnetv2-b3_notop.h5",
        "f6abf7b5849ac99a89b50dd3fd532856",
    ),
    "efficientnet_v2_s": (
        "efficientnetv2-s_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/efficientnet_v2/efficientnetv2-s_notop.h5",
        "af0682fb74e8c54910f2d4393339c070",
    ),
    "efficientnet_v2_m": (
        "efficientnetv2-m_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/efficientnet_v2/efficientnetv2-m_notop.h5",
        "1b8dc055df72dde80d614482840fe342",
    ),
    "efficientnet_v2_l": (
        "efficientnetv2-l_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/efficientnet_v2/efficientnetv2-l_notop.h5",
        "b0b66b5c863aef5b46e8608fe1711615",
    ),
    "convnext_tiny": (
        "convnext_tiny_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/convnext/convnext_tiny_notop.h5",
        "d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1",
    ),
    "convnext_small": (
        "convnext_small_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/convnext/convnext_small_notop.h5",
        "6fc8009faa2f00c1c1dfce59feea9b0745eb260a7dd11bee65c8e20843da6eab",
    ),
    "convnext_base": (
        "convnext_base_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/convnext/convnext_base_notop.h5",
        "40a20c5548a5e9202f69735ecc06c990e6b7c9d2de39f0361e27baeb24cb7c45",
    ),
    "convnext_large": (
        "convnext_large_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/convnext/convnext_large_notop.h5",
        "96f02b6f0753d4f543261bc9d09bed650f24dd6bc02ddde3066135b63d23a1cd",
    ),
    "convnext_xlarge": (
        "convnext_xlarge_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/convnext/convnext_xlarge_notop.h5",
        "de3f8a54174130e0cecdc71583354753d557fcf1f4487331558e2a16ba0cfe05",
    ),
}


# ``count_params()`` of each model built without top (``include_top=False, weights=None``): the
# cached ``_notop`` file must hold at least that many float32 values (4 bytes each), a cheap
# check of a file's size before it is ever loaded (`zoo.weights.cache_state`);
# tests/test_models_cache.py rebuilds a few and compares.
NOTOP_PARAMS: dict[str, int] = {
    "vgg16": 14_714_688,
    "vgg19": 20_024_384,
    "resnet50": 23_587_712,
    "resnet101": 42_658_176,
    "resnet152": 58_370_944,
    "resnet50_v2": 23_564_800,
    "resnet101_v2": 42_626_560,
    "resnet152_v2": 58_331_648,
    "inception_v3": 21_802_784,
    "inception_resnet_v2": 54_336_736,
    "xception": 20_861_480,
    "mobilenet": 3_228_864,
    "mobilenet_v2": 2_257_984,
    "mobilenet_v3_small": 939_120,
    "mobilenet_v3_large": 2_996_352,
    "densenet121": 7_037_504,
    "densenet169": 12_642_880,
    "densenet201": 18_321_984,
    "nasnet_mobile": 4_269_716,
    "nasnet_large": 84_887_922,
    "efficientnet_b0": 4_049_571,
    "efficientnet_b1": 6_575_239,
    "efficientnet_b2": 7_768_569,
    "efficientnet_b3": 10_783_535,
    "efficientnet_b4": 17_673_823,
    "efficientnet_b5": 28_513_527,
    "efficientnet_b6": 40_960_143,
    "efficientnet_b7": 64_097_687,
    "efficientnet_v2_b0": 5_919_312,
    "efficientnet_v2_b1": 6_931_124,
    "efficientnet_v2_b2": 8_769_374,
    "efficientnet_v2_b3": 12_930_622,
    "efficientnet_v2_s": 20_331_360,
    "efficientnet_v2_m": 53_150_388,
    "efficientnet_v2_l": 117_746_848,
    "convnext_tiny": 27_820_128,
    "convnext_small": 49_454_688,
    "convnext_base": 87_566_464,
    "convnext_large": 196_230_336,
    "convnext_xlarge": 348_147_968,
}


def _key(text: str) -> str:
    return text.lower().replace("-", "_")


def _aliases(name: str, keras_name: str, extra: tuple[str, ...]) -> tuple[str, ...]:
    """Natural spellings: ``resnet-50``, ``resnet50v2``, ``mobilenetv2``, ``efficientnetv2-s``.

    (The Keras class name resolves too, in any case, without being listed here.)
    """
    hyphen = re.sub(r"^([a-z]+)(\d)", r"\1-\2", name).replace("_", "-")  # resnet-50-v2
    candidates = (name.replace("_", ""), hyphen, name.replace("_v", "v"), *extra)
    taken = {_key(name)}
    out = []
    for alias in candidates:
        if _key(alias) not in taken:
            taken.add(_key(alias))
            out.append(alias)
    return tuple(out)


def _convention(family: str, size: int) -> InputConvention:
    """How the family's published accuracy was measured (module docstring)."""
    if family in ("efficientnet", "efficientnet_v2"):
        if size >= 320 and family == "efficientnet_v2":
            return InputConvention(resize="squash", interpolation="bicubic")
        return InputConvention("crop", size / (size + 32), "bicubic")
    return InputConvention("crop", 0.875, "bicubic" if family == "convnext" else "bilinear")


def _spec(row: tuple) -> ModelSpec:
    (keras_name, name, family, size, cam, params, depth, size_mb, top1, top5, fname, file_hash,
     extra) = row  # fmt: skip
    preprocess, url_dir, blurb = _FAMILIES[family]
    url = url_dir.format(name=name) + _URL_NAMES.get(fname, fname)
    return ModelSpec(
        name=name,
        family=family,
        builder=f"keras.applications:{keras_name}",
        input_size=size,
        preprocess=preprocess,
        cam_layer=cam,
        params=params,
        depth=depth,
        size_mb=float(size_mb),
        top1=top1,
        top5=top5,
        weights=WeightsSource(
            filename=fname,
            url=url,
            file_hash=file_hash,
            notop=WeightsSource(*_NOTOP[name]),
            convention=_convention(family, size),
        ),
        keras_name=keras_name,
        aliases=_aliases(name, keras_name, extra),
        description=f"Keras {keras_name}: {blurb}, {size}x{size} input",
    )


SPECS: tuple[ModelSpec, ...] = tuple(register(_spec(row)) for row in _MODELS)
