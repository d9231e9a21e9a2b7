# Latency percentile curve, from the CSV perf/latency.sh writes:
#   gnuplot -e "csv='perf/out/latency-X-curve.csv'; out='perf/latency.svg'; tool='wrk2'; subtitle='...'" perf/plot_latency.gnuplot
# CSV columns (with a header line): percentile (0-100, below 100),latency_ms
# x: the "nines" scale, 1/(1-p) on a log axis; y: latency in ms on a log axis.
if (!exists("csv")) csv = "perf/out/latency-curve.csv"
if (!exists("out")) out = "perf/latency.svg"
if (!exists("subtitle")) subtitle = ""
if (!exists("target_ms")) target_ms = 1
if (!exists("tool")) tool = "oha"
set terminal svg size 900,560 dynamic enhanced font "sans,12" background "white"
set output out
set datafile separator ","
set datafile columnheaders
set title "verve latency by percentile (".tool.", constant rate, latency-corrected)\n{/*0.8 ".subtitle."}"
set logscale x 10
set logscale y 10
stats csv using (1/(1-$1/100)) nooutput name "X"
set xrange [1:10**ceil(log10(X_max) + 0.01)]
set xtics ("0%%" 1, "50%%" 2, "90%%" 10, "99%%" 100, "99.9%%" 1000, "99.99%%" 10000, "99.999%%" 100000, "99.9999%%" 1000000)
set format y "%g"
set xlabel "percentile"
set ylabel "latency (ms)"
set grid xtics ytics
set key top left
plot csv using (1/(1-$1/100)):2 with lines lw 2 lc rgb "#1f77b4" title "verve", \
     target_ms with lines dt 2 lc rgb "#d62728" title sprintf("%g ms", target_ms)
