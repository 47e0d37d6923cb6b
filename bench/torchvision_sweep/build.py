import sys, time, json, numpy as np, torch, torch.nn.functional as F
import os as _os
SWEEP = _os.environ.get("SWEEP", "/tmp/sweep")  # where data, models and logs go
from torchvision import models as M
torch.set_num_threads(2)
name=sys.argv[1]; size=int(sys.argv[2]); variants=sys.argv[3].split(',')  # ts,dyn,fix1,dynfix1
train_budget=float(sys.argv[4]) if len(sys.argv)>4 else 90
torch.manual_seed(0)
def make(name):
    if name=='googlenet': return M.googlenet(num_classes=10, aux_logits=False, init_weights=True)
    if name=='vit_small': return M.VisionTransformer(image_size=32, patch_size=4, num_layers=4, num_heads=4, hidden_dim=128, mlp_dim=256, num_classes=10)
    return getattr(M,name)(num_classes=10)
m=make(name)
d=np.load(SWEEP + '/train32.npz'); X=torch.from_numpy(d['x']); Y=torch.from_numpy(d['y'])
opt=torch.optim.AdamW(m.parameters(), lr=1e-3 if name not in ('squeezenet1_1',) else 3e-4)
m.train(); t0=time.time(); step=0; g=torch.Generator().manual_seed(0); correct=0; seen=0; losses=[]
info={'model':name,'size':size}
if train_budget>0:
  while time.time()-t0<train_budget and step<400:
    idx=torch.randint(0,len(X),(64,),generator=g)
    xb=X[idx]; yb=Y[idx]
    if size!=32: xb=F.interpolate(xb,size=(size,size),mode='bilinear',align_corners=False)
    if torch.rand(1,generator=g)<0.5: xb=xb.flip(3)
    out=m(xb)
    if isinstance(out,tuple): out=out[0]
    if hasattr(out,'logits'): out=out.logits
    loss=F.cross_entropy(out,yb); opt.zero_grad(); loss.backward(); opt.step()
    losses.append(loss.item()); correct+=(out.argmax(1)==yb).sum().item(); seen+=64; step+=1
info.update(train_steps=step, train_s=round(time.time()-t0,1), last_loss=float(np.mean(losses[-20:])) if losses else None,
            train_acc_last=None if not seen else correct/seen)
m.eval()
c=np.load(f'{SWEEP}/test{size}.npz')
with torch.no_grad():
    p=torch.cat([m(torch.from_numpy(c['x'][i:i+100])).argmax(1) for i in range(0,400,100)])
info['torch_test_acc']=float((p.numpy()==c['y']).mean())
print(json.dumps(info)); sys.stdout.flush()
for v in variants:
    path=f'{SWEEP}/models/{name}_{size}_{v}.onnx'
    t1=time.time()
    try:
        if v=='ts':
            torch.onnx.export(m, torch.randn(2,3,size,size), path, dynamo=False, opset_version=17, input_names=['input'], output_names=['logits'], dynamic_axes={'input':{0:'batch'},'logits':{0:'batch'}})
        elif v=='fix1':
            torch.onnx.export(m, torch.randn(1,3,size,size), path, dynamo=False, opset_version=17, input_names=['input'], output_names=['logits'])
        elif v=='dyn':
            torch.onnx.export(m, (torch.randn(2,3,size,size),), path, dynamo=True, opset_version=17, input_names=['input'], output_names=['logits'], dynamic_axes={'input':{0:'batch'},'logits':{0:'batch'}})
        elif v=='dynfix1':
            torch.onnx.export(m, (torch.randn(1,3,size,size),), path, dynamo=True, opset_version=17, input_names=['input'], output_names=['logits'])
        print('exported',path,round(time.time()-t1,1))
    except Exception as e:
        import traceback; traceback.print_exc(); print('EXPORT FAILED',path,repr(e)[:300])
    sys.stdout.flush()
