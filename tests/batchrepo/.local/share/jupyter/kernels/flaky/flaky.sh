# A kernel that dies on its first start, before it runs anything, as one
# does whose port another kernel took first; it starts on the next try.
# Found through the work folder, which is the batch task's home.
marker="$HOME/kernel-died-once"
if [ ! -e "$marker" ]; then
  echo "died on its first start" > "$marker"
  exit 1
fi
exec python -m ipykernel_launcher -f "$1"
