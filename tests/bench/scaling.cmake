# Data-parallel scaling benchmark (issue 4, "Speed"), included by tests/bench/CMakeLists.txt.
# `/usr/bin/python3 tests/bench/scaling.py --build-dir <dir>` runs the full benchmark (about
# 20 minutes, see docs/scaling.md); CTest runs it in smoke mode (label "bench": a few steps of
# everything, fails only if a program fails, never on the targets; skipped when Fashion-MNIST is
# missing).
add_executable(scaling_comm ${CMAKE_CURRENT_LIST_DIR}/scaling_comm.c)
target_link_libraries(scaling_comm PRIVATE cornu_warnings cornu_rt)
add_executable(scaling_step ${CMAKE_CURRENT_LIST_DIR}/scaling_step.c)
target_link_libraries(scaling_step PRIVATE cornu_warnings cornu_rt cornu_fit cornu_formats)
target_compile_definitions(scaling_step PRIVATE CORNU_MODELS_DIR="${CMAKE_SOURCE_DIR}/launch/models")

add_test(NAME bench.scaling_smoke COMMAND /usr/bin/python3 ${CMAKE_CURRENT_LIST_DIR}/scaling.py
  --smoke --cornu $<TARGET_FILE:cornu> --scaling-comm $<TARGET_FILE:scaling_comm>
  --scaling-step $<TARGET_FILE:scaling_step>
  --bench-gemm $<TARGET_FILE:bench_gemm>)
set_tests_properties(bench.scaling_smoke PROPERTIES LABELS bench TIMEOUT 180
  SKIP_RETURN_CODE 77
  ENVIRONMENT "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OPENBLAS_NUM_THREADS=1")
