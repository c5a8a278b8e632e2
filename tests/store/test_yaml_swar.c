/* test_yaml_swar.c - the YAML fast loader's portable scanners (8-byte SWAR blocks), which
 * builds without SSE2 (ARM, ...) use instead of the 16-byte SSE2 ones.
 *
 * Provides: the whole of test_yaml_fast.c run against a copy of src/store/yaml.c compiled
 * here with __SSE2__ undefined, so the SWAR path is checked on every machine (its lowest-
 * flag-only rule and the shifted last-line block differ from the exact SSE2 masks). The
 * copy's definitions take the place of libdscore's yaml.o at link time (every symbol of
 * that unit is defined here, so the archive member is never pulled in).
 * Must not: be built with a different yaml.c than the one under test (it includes it).
 */
#undef __SSE2__
#include "../../src/store/yaml.c"

#include "test_yaml_fast.c"
