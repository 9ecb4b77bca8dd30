# Writes a PDF whose CreationDate is the wall clock, as a writer that ignores SOURCE_DATE_EPOCH
# does; the model and the metrics do not depend on the time.
import json, time
stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime()) + "%06d" % (time.time_ns() // 1000 % 10 ** 6)
open("/out/report.pdf", "wb").write(
    b"%PDF-1.4\n1 0 obj << /CreationDate (D:" + stamp.encode() + b"Z) >> endobj\n%%EOF\n")
open("/out/model.bin", "wb").write(b"weights" * 8)
json.dump({"loss": 0.25}, open("/out/metrics.json", "w"))
