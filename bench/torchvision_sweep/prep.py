# Build calib/test/train npz from CIFAR-10 JPEG copy at given sizes
import numpy as np, os
SWEEP = os.environ.get("SWEEP", "/tmp/sweep")  # where data, models and logs go
from PIL import Image
root=SWEEP + '/data'
classes=sorted(os.listdir(f'{root}/train'))
print(classes)
mean=np.array([0.485,0.456,0.406],np.float32)[:,None,None]; std=np.array([0.229,0.224,0.225],np.float32)[:,None,None]
def load(split, start, n, size):
    xs=[];ys=[]
    for ci,c in enumerate(classes):
        files=sorted(os.listdir(f'{root}/{split}/{c}'))[start:start+n]
        for f in files:
            im=Image.open(f'{root}/{split}/{c}/{f}').convert('RGB')
            if size!=32: im=im.resize((size,size),Image.BILINEAR)
            a=np.asarray(im,np.float32).transpose(2,0,1)/255.
            xs.append((a-mean)/std); ys.append(ci)
    return np.stack(xs).astype(np.float32), np.array(ys,np.int64)
out=SWEEP
for size in [32,64,224]:
    x,y=load('train',1000,40,size); np.savez(f'{out}/calib{size}.npz',x=x,y=y)
    x,y=load('test',0,40,size); np.savez(f'{out}/test{size}.npz',x=x,y=y)
    print(size, x.shape)
x,y=load('train',0,500,32); np.savez(f'{out}/train32.npz',x=x,y=y); print('train32',x.shape)
