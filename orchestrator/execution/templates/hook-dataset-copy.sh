# Variation "file-order": the job sees a copy of the dataset whose folders list their entries in
# the reverse of the original order.
if [ -n "${REPRUN_DATASET_COPY:-}" ]; then
  reprun_src=$REPRUN_DATASET_SOURCE reprun_dst=$REPRUN_DATASET_COPY
  # tmpfs lists a folder oldest first or newest first depending on the kernel: ask it, then
  # create the entries so that the job sees them in the reverse of the original listing.
  mkdir "$reprun_dst/.reprun-order" && : > "$reprun_dst/.reprun-order/1" \
    && : > "$reprun_dst/.reprun-order/2" || exit 97
  case "$(find "$reprun_dst/.reprun-order" -mindepth 1 | head -n 1)" in
    */1) reprun_plan='1!G;h;$!d' ;;
    *) reprun_plan='' ;;
  esac
  rm -rf "$reprun_dst/.reprun-order"
  find "$reprun_src" -mindepth 1 | sed "$reprun_plan" | while IFS= read -r reprun_path; do
    reprun_rel=${reprun_path#"$reprun_src"/}
    if [ -d "$reprun_path" ]; then
      mkdir -p "$reprun_dst/$reprun_rel" || exit 1
    else
      mkdir -p "$reprun_dst/$(dirname "$reprun_rel")" \
        && cp -p "$reprun_path" "$reprun_dst/$reprun_rel" || exit 1
    fi
  done || { echo "reprun: could not copy the dataset into $reprun_dst" >&2; exit 97; }
  chmod -R a-w "$reprun_dst"
fi
