import json, glob, os, re
SWEEP = os.environ.get("SWEEP", "/tmp/sweep")  # where data, models and logs go
L=SWEEP + '/logs'
rows=[]
for rc in sorted(glob.glob(f'{L}/*.rc')):
    b=os.path.basename(rc)[:-3]
    r=open(rc).read().strip()
    t=open(f'{L}/{b}.time').read() if os.path.exists(f'{L}/{b}.time') else ''
    wall=re.search(r'Elapsed.*: (\S+)',t); rss=re.search(r'Maximum resident set size \(kbytes\): (\d+)',t)
    w='?'
    if wall:
        p=[float(x) for x in wall.group(1).split(':')]; w=p[-1]+60*p[-2]+(3600*p[-3] if len(p)>2 else 0)
    pl=open(f'{L}/{b}.plain').read(); pm=re.search(r'plain_s=(\S+) acc=(\S+)',pl)
    ps=float(pm.group(1)) if pm else None
    fa=rd='-'
    try:
        j=json.load(open(f'{L}/{b}.json'))
        fa=f"{j['before']['forget_accuracy']*100:.1f}->{j['after']['forget_accuracy']*100:.1f}"
        rd=f"{j['retain_accuracy_drop']*100:+.2f} (worst c{j['worst_retain_drop']['class']} {j['worst_retain_drop']['drop']*100:+.1f})"
        ret=f"{j['before']['retain_accuracy']*100:.1f}"
    except Exception: ret='-'
    ratio=f"{w/ps:.0f}x" if ps and w!='?' else '-'
    rows.append(f"| {b} | {r} | {w} | {ps} ({ratio}) | {int(rss.group(1))//1024 if rss else '?'} | {fa} | {rd} | {ret} |")
print('| model | rc | wall s | plain s (ratio) | maxRSS MB | forget acc % | retain drop pts | retain acc before |')
print('\n'.join(rows))
