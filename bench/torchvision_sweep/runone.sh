#!/bin/bash
# usage: runone.sh MODELPATH SIZE
M=$1; S=$2; B=$(basename $M .onnx); L=${SWEEP:-/tmp/sweep}/logs
D=$(cd "$(dirname "$0")" && pwd)
cd /tmp
: onnx-damp runs in the active environment
python $D/plain.py $M ${SWEEP:-/tmp/sweep}/calib$S.npz > $L/$B.plain 2>&1
timeout -s KILL 600 /usr/bin/time -v -o $L/$B.time python -m onnx_damp.cli forget $M --data ${SWEEP:-/tmp/sweep}/calib$S.npz --forget 3 -o ${SWEEP:-/tmp/sweep}/out_$B.onnx --eval-data ${SWEEP:-/tmp/sweep}/test$S.npz --json > $L/$B.json 2> $L/$B.err
echo "rc=$?" > $L/$B.rc
echo "$B $(cat $L/$B.rc) $(grep -E 'Elapsed|Maximum resident' $L/$B.time | tr -s ' ' | tr '\n' ' ') $(cat $L/$B.plain)"
