"""PyTorch (and Caffe2) checkpoints -> kvjax's converted Flax checkpoints.

    kvjax convert SRC DST --arch ARCH [--prefix PREFIX]   (converters.commands.convert)
    kvjax inspect SRC                                     (converters.commands.inspect)

Small steps, each in its own module:

    load.py       read a file safely into {name: numpy array} (never runs code from the file)
    tables.py     the registry of architecture tables and the layout changes they use
                  (each with its exact inverse)
    parity.py     the checks a fresh conversion must pass before it is kept (every tensor
                  reads back bit-identical; a forward pass is finite at every layer), recorded
                  as the manifest's "parity"
    commands.py   `convert(src, dst, arch)` and `inspect(src)`, returning the text to print;
                  also the choice of the key prefix that holds the network (MoCo's
                  "encoder_q.", "backbone.": `--prefix`, or inferred from the table)

One explicit rename table per architecture (PyTorch name -> NNX state path + layout change,
and the keys declared irrelevant), each beside the upstream layout it reads:

    c3d.py            c3d                      DavideA/c3d-pytorch
    pytorch_i3d.py    pytorch-i3d              piergiaj/pytorch-i3d
    video_resnet.py   r3d_18 mc3_18 r2plus1d_18  torchvision.models.video
    slowfast_i3d.py   slowfast-i3d-r50         facebookresearch/SlowFast (.pyth or Caffe2 .pkl)
    videogpt.py       videogpt-vqvae           wilson1yan/VideoGPT (encoder of the VQ-VAE)
    flownets.py       flownets                 ClementPinard/FlowNetPytorch

The converted checkpoint (kvjax.io.model_checkpoint) is loaded by
`kvjax.load_model(ARCH, checkpoint=DST)` without torch; torch is imported lazily, only here.
"""
