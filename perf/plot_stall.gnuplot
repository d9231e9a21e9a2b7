# Latency of the 1 ms probe around a window boundary, from perf/merge_stall.sh:
#   gnuplot -e "csv='perf/out/merge_stall-X-probe.csv'; boundary=1700000000; out='perf/merge_stall.svg'" perf/plot_stall.gnuplot
# CSV columns (with a header line): due_unix_ms,latency_us,service_us,status
# Optional: oha='FILE.csv' with seconds_since_boundary,max_latency_ms (oha's worst request per
# 50 ms), drawn as a line. Probe requests under 0.5 ms are thinned to one in 10 to keep the
# SVG small; every slower one is drawn.
if (!exists("csv")) csv = "perf/out/merge_stall-probe.csv"
if (!exists("out")) out = "perf/merge_stall.svg"
if (!exists("subtitle")) subtitle = ""
if (!exists("boundary")) boundary = 0
if (!exists("oha")) oha = ""
set terminal svg size 900,520 dynamic enhanced font "sans,12" background "white"
set output out
set datafile separator ","
set datafile columnheaders
set title "request latency across a window boundary (one request per ms, keep-alive)\n{/*0.8 ".subtitle."}"
set logscale y 10
set format y "%g"
set xlabel "seconds since the window boundary"
set ylabel "latency (ms)"
set grid
set autoscale xfix
set offsets 0.1, 0.1, 0, 0
set key outside bottom center vertical maxrows 2
set arrow from 0, graph 0 to 0, graph 1 nohead dt 2 lc rgb "#555555"
set arrow from 0.2, graph 0 to 0.2, graph 1 nohead dt 3 lc rgb "#d62728"
set label "boundary" at 0, graph 0.97 right offset -0.5,0 font ",10"
set label "seal (+200 ms)" at 0.2, graph 0.97 left offset 0.5,0 font ",10" tc rgb "#d62728"
# Fast probe requests thinned to 1 in 10, every slow one drawn: the SVG stays ~10 times
# smaller and shows every spike.
probe(l) = (l >= 0.5 || int(column(0)) % 10 == 0) ? l : NaN
if (oha ne "") {
    plot csv using ($1/1000.0 - boundary):(probe($2/1000.0)) with points pt 7 ps 0.25 lc rgb "#1f77b4" \
             title "probe: latency from the due time (under 0.5 ms: 1 in 10 shown)", \
         oha using 1:2 with steps lw 1.5 lc rgb "#60ff7f0e" title "oha at a constant rate: worst request per 50 ms"
} else {
    plot csv using ($1/1000.0 - boundary):(probe($2/1000.0)) with points pt 7 ps 0.25 lc rgb "#1f77b4" \
             title "probe: latency from the due time (under 0.5 ms: 1 in 10 shown)"
}
