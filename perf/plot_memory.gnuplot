# Bytes per distinct id against the window size, per id distribution, from perf/memory.sh:
#   gnuplot -e "csv='perf/out/memory-X.csv'; out='perf/memory.svg'; subtitle='...'" perf/plot_memory.gnuplot
# CSV columns (with a header line): n, then RSS and serialized bytes per id of random-i64,
# random-u32, sequential and snowflake ids, then the RSS bytes per id of the same before (the
# earlier, roaring-based set), in the same order (empty where not measured).
if (!exists("csv")) csv = "perf/out/memory.csv"
if (!exists("out")) out = "perf/memory.svg"
if (!exists("subtitle")) subtitle = ""
set terminal svg size 900,520 dynamic enhanced font "sans,12" background "white"
set output out
set datafile separator ","
set datafile columnheaders
set datafile missing ""
set title "bytes per distinct id held for a window (RSS growth) and shipped (serialized); thin: RSS before\n{/*0.8 ".subtitle."}"
set logscale x 10
set logscale y 10
set format x "%.0s%c"
set format y "%g"
set xlabel "distinct ids in the window"
set ylabel "bytes per id"
set grid
set offsets graph 0.05, graph 0.05, 0, 0
set key outside right center vertical
colors = "#d62728 #1f77b4 #2ca02c #9467bd"
names = "random-i64 random-u32 sequential snowflake"
# The information-theoretic floor for n random ids out of 2^64: log2(C(2^64, n)) / n bits,
# about 64 - log2(n) + log2(e).
limit(n) = (64 - log(n) / log(2) + 1 / log(2)) / 8
plot for [i=0:3] csv using 1:(column(2 + 2 * i)) with linespoints lw 2 pt 7 lc rgb word(colors, i + 1) title word(names, i + 1)." RSS", \
     for [i=0:3] csv using 1:(column(3 + 2 * i)) with linespoints lw 2 dt 2 pt 6 lc rgb word(colors, i + 1) title word(names, i + 1)." serialized", \
     for [i=0:3] csv using 1:(column(10 + i)) with linespoints lw 1 dt 4 pt 1 ps 0.6 lc rgb word(colors, i + 1) title word(names, i + 1)." RSS before", \
     csv using 1:(limit($1)) with lines lw 1 dt 3 lc rgb "#555555" title "floor, random i64"
