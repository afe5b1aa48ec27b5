// kiv_make_golden OUT.kiv: writes the golden archive (see golden.h) to OUT.kiv, replacing it.
// fixtures/golden/make_golden.sh runs it and makes the hex dump; see fixtures/golden/README.md.
#include <cstdio>
#include <string>

#include "tests/storage/golden.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: kiv_make_golden OUT.kiv\n");
    return 2;
  }
  const std::string out = argv[1];
  const std::string tmp = out + ".tmp";
  std::remove(tmp.c_str());  // a leftover of an interrupted run; Create refuses to overwrite
  const kiv::Status s = kiv::golden::Write(tmp);
  if (!s.ok()) {
    std::fprintf(stderr, "kiv_make_golden: %s\n", s.ToString().c_str());
    std::remove(tmp.c_str());
    return 1;
  }
  if (std::rename(tmp.c_str(), out.c_str()) != 0) {
    std::perror("kiv_make_golden: rename");
    return 1;
  }
  std::printf("wrote %s\n", out.c_str());
  return 0;
}
