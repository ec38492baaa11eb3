# fig_add_instance(<target> <source> <output name> <nvcc flags as a ;-list>)
# One instance = one shared library: only the FIG_EXPORT C entry points are visible (the flags
# carry -fvisibility=hidden), static cudart so the library runs under any torch. The flags are
# generator/render.py's, verbatim: they are part of the library's cache key.
function(fig_add_instance target source output_name flags)
  add_library(${target} SHARED ${source})
  set_target_properties(${target} PROPERTIES
    CUDA_ARCHITECTURES OFF
    CUDA_RUNTIME_LIBRARY Static
    PREFIX "lib"
    OUTPUT_NAME ${output_name}
    LIBRARY_OUTPUT_DIRECTORY ${FIG_LIBRARY_DIR})
  target_include_directories(${target} PRIVATE ${FIG_GENERATED_DIR} ${FIG_TEMPLATE_DIR} ${FIG_CUTLASS_INCLUDE})
  target_compile_options(${target} PRIVATE "$<$<COMPILE_LANGUAGE:CUDA>:${flags}>")
  target_link_options(${target} PRIVATE -Wl,--exclude-libs,ALL)
endfunction()
