"""The models, one file each with its config dataclass, built through one registry per kind:

    predictors/      frame predictors (SimVP, ConvLSTM, ConvGRU): a module there is a predictor
    segmenters.py    U-Net, ENet and Mask R-CNN (torchvision or detectron2 backend)
    forecasters.py   the mask forecaster of route `masks` (over any predictor)

Nothing here imports torch, so listing the models costs nothing.
"""
