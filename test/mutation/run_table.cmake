# Runs the mutation programs (test/mutation/README.md) and prints one table: the run-time
# mutations of the emulation, then each recompiled mutant. Fails when any mutation survived.
#   -DRUNTIME=<mutation_runtime>  -DMUTANTS=<mutant_a;mutant_b;...>
cmake_minimum_required(VERSION 3.25)
set(failed "")
execute_process(COMMAND "${RUNTIME}" RESULT_VARIABLE code OUTPUT_VARIABLE table
                ERROR_VARIABLE errors)
message("${table}${errors}")
if(NOT code EQUAL 0)
  list(APPEND failed "run-time mutations")
endif()
foreach(mutant IN LISTS MUTANTS)
  execute_process(COMMAND "${mutant}" RESULT_VARIABLE code OUTPUT_VARIABLE line
                  ERROR_VARIABLE errors)
  message("${line}${errors}")
  if(NOT code EQUAL 0)
    list(APPEND failed "${mutant}")
  endif()
endforeach()
if(failed)
  message(FATAL_ERROR "mutations not caught: ${failed}")
endif()
