#!/bin/bash
D=$(cd "$(dirname "$0")" && pwd)  # these scripts
SWEEP=${SWEEP:-/tmp/sweep}; export SWEEP
mkdir -p $SWEEP/models $SWEEP/logs && cd $SWEEP
R=$D/runone.sh
build() { ( . ${TV:-/tmp/tv}/bin/activate; timeout 400 python $D/build.py "$@" > logs/build_$1_$2.log 2>&1 ); grep -E '^\{|exported|FAILED' logs/build_$1_$2.log; }
while read name size variants budget; do
  build $name $size $variants $budget
  for v in ${variants//,/ }; do f=${SWEEP:-/tmp/sweep}/models/${name}_${size}_$v.onnx; [ -f $f ] && $R $f $size; done
done <<'LIST'
resnet18 32 ts,dyn,fix1 90
mobilenet_v2 32 ts,dyn 90
mobilenet_v3_small 32 ts,fix1 90
efficientnet_b0 32 ts,dyn 90
shufflenet_v2_x0_5 32 ts 60
squeezenet1_1 64 ts 60
densenet121 32 ts 60
googlenet 64 ts 60
mnasnet0_5 32 ts 60
regnet_y_400mf 32 ts 60
convnext_tiny 32 ts,dyn 60
vit_small 32 ts,dyn,fix1 60
swin_t 64 ts,dyn 60
mobilenet_v3_small 224 ts,dyn 60
resnet18 224 ts 0
LIST
echo QUEUE DONE
